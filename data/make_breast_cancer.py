"""Write scikit-learn's bundled breast-cancer data as ``breast_cancer.csv`` (run once).

Kept so the provenance of the shipped file is executable: running it again with
scikit-learn 1.9.1 reproduces the file byte for byte (sha256 in ``data/README.md``).
"""

from pathlib import Path

from sklearn.datasets import load_breast_cancer


def main() -> None:
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [column.replace(" ", "_") for column in frame.columns]
    frame["diagnosis"] = frame.pop("target").map({0: "malignant", 1: "benign"})
    frame.to_csv(Path(__file__).with_name("breast_cancer.csv"), index=False, float_format="%.10g")


if __name__ == "__main__":
    main()
