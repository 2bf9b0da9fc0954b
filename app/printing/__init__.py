"""Printables: completed forms and CD labels as PDF (WeasyPrint)."""
