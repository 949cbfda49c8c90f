"""Scale-out: batch plans on Ray Data and the server on Ray Serve — adapters over `Engine`, no generation logic."""
