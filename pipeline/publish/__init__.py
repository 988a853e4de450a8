"""The dataset as a Hugging Face Hub dataset repo: staging, the card, incremental sync."""
