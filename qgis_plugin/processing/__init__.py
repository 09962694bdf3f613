"""The Processing provider: the engine as batchable, modeler-ready algorithms."""
