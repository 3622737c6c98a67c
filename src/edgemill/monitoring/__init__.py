"""Model monitoring shared by the compiler (the baseline), the agent (histograms) and the server (drift)."""
