"""The lake: atomic versioned stage outputs (:mod:`.store`), one reader per stage table
(:mod:`.tables`), the published reference splits (:mod:`.reference`) and the model-folder
contract (:mod:`.models`). Data contracts: docs/ARCHITECTURE.md."""
