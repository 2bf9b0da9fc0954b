"""The trauma route to Nottingham: the on-call radiologist's screen (guideline 2.8, Appendix 4)."""
