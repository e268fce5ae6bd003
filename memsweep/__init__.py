"""memsweep: measure how many bits language models memorize (Morris et al. 2025)."""
