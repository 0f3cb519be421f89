"""qsapp: a quickstart-style Flower app used to test AcmeStrategy as a drop-in for FedAvg."""
