"""The request desk: the three forms, call references, request pages."""
