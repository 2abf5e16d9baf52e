"""The FUSE front end: operations that translate kernel requests for the core."""
