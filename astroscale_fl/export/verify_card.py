"""``python -m astroscale_fl.export.verify_card model_card.json|MODEL_DIR``: check a model card.

First the card's SHA-256 of ``weights.pt`` and ``preprocessing.json`` against the files beside it
(a tampered or truncated directory is refused in one line, exit 2), then every ε of its ``privacy``
section recomputed with Opacus alone (:func:`astroscale_fl.privacy.card.verify_section`). A card
alone, with no model files beside it and no ``files`` section, is checked for ε only.
"""

from __future__ import annotations

import sys
from pathlib import Path

from astroscale_fl.errors import DataError, report_user_errors
from astroscale_fl.export.model_dir import CARD_FILE, WEIGHTS_FILE, read_json_file, verify_files
from astroscale_fl.privacy.card import recomputable_groups, recompute_epsilon, verify_section


def read_verified_card(path: str | Path) -> dict:
    """The card at ``path`` (a card file or a model directory), its model files verified when present."""
    path = Path(path)
    card_path = path / CARD_FILE if path.is_dir() else path
    card = read_json_file(card_path)
    if not isinstance(card, dict):
        raise DataError(f"{card_path}: expected a JSON object, got {type(card).__name__}")
    if "files" in card or (card_path.parent / WEIGHTS_FILE).exists():
        verify_files(card_path.parent, card)
        print(f"{card_path.parent}: {', '.join(sorted(card['files']))} match the SHA-256 in the card")
    section = card.get("privacy", card)
    if not (isinstance(section, dict) and isinstance(section.get("nodes", []), list)
            and all(isinstance(n, dict) and {"node", "epsilon", "delta", "accountant", "history"} <= set(n) for n in section.get("nodes", []))):
        raise DataError(f"{card_path}: privacy: expected {{\"nodes\": [{{\"node\", \"accountant\", \"delta\", \"epsilon\", \"history\"}}, ...]}}")
    return card



@report_user_errors
def main(argv: list[str] | None = None) -> int:
    """``python -m astroscale_fl.export.verify_card CARD.json|MODEL_DIR``: verify the files, recompute every node's ε."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m astroscale_fl.export.verify_card MODEL_CARD.json|MODEL_DIR", file=sys.stderr)
        return 2
    card = read_verified_card(args[0])
    section = card.get("privacy", card)
    for label, group, _ in recomputable_groups(section):
        for entry in group.get("nodes", []):
            print(f"{label}{entry['node']}: claimed epsilon={float(entry['epsilon']):.6g} recomputed={recompute_epsilon(entry):.6g} (delta={entry['delta']:g}, {entry['accountant']})")
    problems = verify_section(section)
    for problem in problems:
        print(f"MISMATCH {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
