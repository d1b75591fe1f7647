"""Writes examples/data/penguins-train.csv and penguins-new.csv: a SYNTHETIC raw table shaped like
the Palmer penguins (drawn with that data set's per-species means and spreads, rounded as it is),
with empty cells and text columns, for the README's worked example of a raw table. Run from the
repository's root: python examples/make_penguins.py"""

import numpy as np
import pandas as pd

SPECIES = {  # mean, sd of bill length (mm), flipper length (mm), body mass (g); islands, as in the real table
    "Adelie": ((38.8, 2.7), (190.0, 6.5), (3700, 460), ["Biscoe", "Dream", "Torgersen"]),
    "Chinstrap": ((48.8, 3.3), (196.0, 7.1), (3733, 384), ["Dream"]),
    "Gentoo": ((47.5, 3.1), (217.0, 6.5), (5076, 504), ["Biscoe"]),
}


def table(rows: int, seed: int, unknown_island: bool = False) -> pd.DataFrame:
    g = np.random.default_rng(seed)
    species = g.choice(list(SPECIES), rows, p=[0.44, 0.20, 0.36])
    out = []
    for i, s in enumerate(species):
        (bm, bs), (fm, fs), (mm, ms), islands = SPECIES[s]
        island = g.choice(islands)
        if unknown_island and i % 7 == 3:
            island = "Anvers"  # an island the training rows never saw
        out.append(
            {
                "id": f"p{seed}{i:03d}",
                "island": island,
                "bill_length_mm": round(g.normal(bm, bs), 1),
                "flipper_length_mm": round(g.normal(fm, fs)),
                "body_mass_g": int(round(g.normal(mm, ms), -1)),
                "sex": g.choice(["male", "female"]),
                "species": s,
            }
        )
    frame = pd.DataFrame(out).astype(object)
    for column in ["bill_length_mm", "flipper_length_mm", "body_mass_g", "sex"]:
        frame.loc[g.random(rows) < 0.06, column] = None  # empty cells, as the real table has
    return frame


if __name__ == "__main__":
    table(240, 1).to_csv("examples/data/penguins-train.csv", index=False)
    table(8, 2, unknown_island=True).drop(columns=["species"]).to_csv("examples/data/penguins-new.csv", index=False)
