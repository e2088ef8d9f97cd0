"""Road networks: OpenDRIVE conversion, procedural maps, and the `LaneGraph` arrays."""
