"""The training side: THE training step (``step.py``) and a PEFT client built on a shared base (``client.py``).

Imports torch, transformers and peft; nothing on the planning path imports this package.
"""
