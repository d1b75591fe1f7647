"""Fitted transforms that take a raw table to the matrix a model sees (issue #26): which cells are
missing (`missing`), imputation (`impute`), one-hot categories (`categories`), target scaling
(`target`), and the schema that holds them and is saved with the weights (`schema`).

Each transform is a frozen dataclass: `fit` (a classmethod, on the training rows), `transform`
(on a block of rows: a table transformed block by block gives the rows the whole table gives),
and `to_dict`/`from_dict` (JSON-safe state; `from_dict` refuses state nncli would not write). Each
equals its scikit-learn counterpart bit for bit in float64 (tests/test_preprocess_units.py).
numpy and polars only: no torch, and nothing from nncli.core (the io layer)."""
