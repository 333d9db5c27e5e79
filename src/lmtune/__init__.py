"""lmtune: pretrain a BERT-style masked language model on your own text, from one YAML file."""

__version__ = "0.1.0"
