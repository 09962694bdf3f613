"""The plugin's side of the engine: finding its interpreter and talking to its worker."""
