"""The analyst workbench: the live queue at /desk."""
