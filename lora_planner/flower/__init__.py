"""lora-planner on Flower (flwr 1.41 Message API; flwr is imported only in this package).

- ``PlanStrategy`` (``strategy.py``): one Message per node with its own plan and adapter slice;
  our rules aggregate.
- ``client_app.app``: builds the client's PEFT model from the received config and trains its
  partition with the executor's client code (THE training step).
- ``server_app.app``: plans, runs the executor's rounds on the Grid and writes the run folder.
- ``FlowerBackend`` (``backend.py``): the executor's backend ``flower``; ``simulate`` runs it on the
  Simulation Engine (Ray) in-process.
"""
