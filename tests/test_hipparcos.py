"""The Hipparcos reader against known values of ESA I/311 (hip2.dat)."""

import numpy as np
import pytest

from astroscale_fl.data.sources import hipparcos
from astroscale_fl.errors import DataError


def test_reads_all_stars_with_readme_columns(hipparcos):
    assert len(hipparcos) == hipparcos_mod().NUM_STARS == 117_955
    assert list(hipparcos.columns) == [
        "HIP", "Sn", "So", "Nc", "RArad", "DErad", "Plx", "pmRA", "pmDE", "e_RArad", "e_DErad", "e_Plx",
        "e_pmRA", "e_pmDE", "Ntr", "F2", "F1", "var", "ic", "Hpmag", "e_Hpmag", "sHp", "VA", "B-V", "e_B-V", "V-I",
    ]
    assert hipparcos["HIP"].is_unique
    assert all(unit is not None for unit in hipparcos_mod().UNITS.values())
    assert hipparcos_mod().UNITS["Plx"] == "mas" and hipparcos_mod().UNITS["RArad"] == "rad"


def hipparcos_mod():
    return hipparcos


@pytest.mark.parametrize(
    "hip, field, value",
    [
        (1, "RArad", 0.0000159148), (1, "DErad", 0.0190068680), (1, "Plx", 4.55), (1, "Hpmag", 9.2043),
        (1, "B-V", 0.482), (1, "V-I", 0.550), (1, "Ntr", 90),
        (2, "Plx", 20.85), (2, "pmRA", 182.88), (2, "Sn", 75),
        (32349, "Plx", 379.21), (32349, "Hpmag", -1.0876),  # Sirius
        (71683, "Plx", 754.81), (71683, "pmRA", -3679.25),  # alpha Centauri A
        (91262, "Plx", 130.23), (91262, "B-V", -0.001),  # Vega
    ],
)
def test_known_values(hipparcos, hip, field, value):
    row = hipparcos.loc[hipparcos["HIP"] == hip].iloc[0]
    assert row[field] == pytest.approx(value, abs=1e-10)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found: .*nope.dat"):
        hipparcos.read_hipparcos(tmp_path / "nope.dat")


def test_malformed_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "hip2.dat"
    bad.write_text("1 5 0 1 abc\n")
    with pytest.raises(DataError, match="hip2.dat"):
        hipparcos.read_hipparcos(bad)


def test_absmag_task_selection_and_target(absmag_frame, hipparcos):
    assert len(absmag_frame) == 30_574
    vega = absmag_frame.loc[absmag_frame["id"] == 91262].iloc[0]
    assert vega["M_Hp"] == pytest.approx(0.0868 + 5 * np.log10(130.23 / 100), abs=1e-9)
    assert "Plx" not in absmag_frame.columns and "e_Plx" not in absmag_frame.columns
