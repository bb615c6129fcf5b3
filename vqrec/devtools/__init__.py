"""Developer tools: the demo data generator and the local stack's REST client."""
