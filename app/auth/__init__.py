"""Sign-in, users and roles."""
