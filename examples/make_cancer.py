"""Writes examples/data/cancer-train.csv and cancer-test.csv: scikit-learn's breast cancer table (569
tumours, 30 measurements; Wisconsin Diagnostic Breast Cancer, shipped with scikit-learn, nothing
downloaded), the column names with underscores and the target `diagnosis` as text (malignant or
benign), split 455/114 rows by a seeded shuffle, for the binary examples of `nncli explain`. Run from
the repository's root: python examples/make_cancer.py"""

import numpy as np
from sklearn.datasets import load_breast_cancer

if __name__ == "__main__":
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame["diagnosis"] = [bunch.target_names[t] for t in frame.pop("target")]
    order = np.random.default_rng(0).permutation(len(frame))
    frame.iloc[order[:455]].to_csv("examples/data/cancer-train.csv", index=False)
    frame.iloc[order[455:]].to_csv("examples/data/cancer-test.csv", index=False)
