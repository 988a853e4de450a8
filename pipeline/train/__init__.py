"""Training normal and adversarially trained models into a zoo file (the offline demo zoo)."""
