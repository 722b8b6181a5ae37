"""Galactic model: geometry, density laws, kinematics and dust of the simulated Milky Way.

Every number below is a published value (or a round simplification of one, said so):

* Sun's position and the rotation curve -- Bland-Hawthorn & Gerhard 2016, ARA&A 54, 529
  (R0 = 8.2 +- 0.1 kpc, z_sun = 25 +- 5 pc, Theta0 = 238 +- 15 km/s; a flat curve here).
* Solar peculiar motion -- Schoenrich, Binney & Dehnen 2010, MNRAS 403, 1829
  ((U, V, W) = (11.1, 12.24, 7.25) km/s; U towards the Galactic centre, V along rotation).
* Density laws -- Juric et al. 2008, ApJ 673, 864, Table 10 ("bias-corrected" fit):
  thin disk H1 = 300 pc, L1 = 2600 pc; thick disk H2 = 900 pc, L2 = 3600 pc with local
  normalisation f_thick = 0.12 of the thin disk; halo power law n_H = 2.77, flattening
  q_H = 0.64, local normalisation f_halo = 0.0051.  The halo law gets a 0.5 kpc core (a
  softening of ours) so that its density stays finite at the Galactic centre.
* Velocity ellipsoids and asymmetric drift -- Bensby, Feltzing & Lundstroem 2003, A&A 410, 527,
  Table 1: (sigma_U, sigma_V, sigma_W; V_asym) = thin (35, 20, 16; -15), thick (67, 38, 35; -46),
  halo (160, 90, 90; -220) km/s, applied as (sigma_R, sigma_phi, sigma_z) everywhere (no
  radial gradients, no vertex deviation).
* Metallicity distributions -- thin disk [Fe/H] = -0.14 +- 0.19 (Nordstroem et al. 2004, A&A 418,
  989, the Geneva-Copenhagen survey), thick disk -0.6 +- 0.3 and halo -1.46 +- 0.5 (Ivezic et al.
  2008, ApJ 684, 287).
* Ages -- Robin et al. 2003, A&A 409, 523 (Besancon model): thin disk 0-10 Gyr with a constant
  star formation rate, thick disk ~11 Gyr, halo ~14 Gyr (here 12-13.5 Gyr, within the age of the
  Universe).
* Dust -- an exponential dust layer with scale height 134 pc (Drimmel & Spergel 2001, ApJ 556,
  181) and 0.7 mag/kpc of visual extinction in the mid-plane, the classical mean value
  (e.g. Binney & Merrifield 1998, Galactic Astronomy).

Coordinates: heliocentric Galactic (l, b, d); Galactocentric Cartesian with the Galactic centre
at the origin, the Sun at (-R0, 0, z_sun), y along the direction of rotation at the Sun (l = 90 deg)
and z towards the north Galactic pole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Speed of light in km/s (exact, SI definition).
C_KMS = 299_792.458

#: Galactocentric distance of the Sun, pc (Bland-Hawthorn & Gerhard 2016).
R0_PC = 8200.0
#: Height of the Sun above the mid-plane, pc (Bland-Hawthorn & Gerhard 2016; Juric et al. 2008).
Z_SUN_PC = 25.0
#: Circular speed, km/s, flat with radius (Bland-Hawthorn & Gerhard 2016).
V_CIRC_KMS = 238.0
#: Solar motion relative to the local standard of rest (U, V, W), km/s (Schoenrich et al. 2010).
SOLAR_PECULIAR_KMS = (11.1, 12.24, 7.25)

#: Visual extinction per pc in the mid-plane (0.7 mag/kpc) and the dust scale height (pc).
DUST_AV_PER_PC = 0.7e-3
DUST_SCALE_HEIGHT_PC = 134.0

#: Extinction in a band relative to A_V: Cardelli, Clayton & Mathis 1989 (I, H), Wang & Chen
#: 2019, ApJ 877, 116 (Gaia G), Schlafly & Finkbeiner 2011, ApJ 737, 103 (SDSS g: 3.303/2.742).
EXTINCTION_RATIO = {"V": 1.0, "I": 0.479, "H": 0.190, "G": 0.789, "g": 1.205}


@dataclass(frozen=True)
class Population:
    """One stellar population: where its stars are, how they move, how old and metal-rich."""

    name: str
    kind: str  # "disk" or "halo"
    norm: float  # density at (R0, z=0) relative to the thin disk (Juric et al. 2008)
    scale_height_pc: float = 0.0  # disk only
    scale_length_pc: float = 0.0  # disk only
    halo_n: float = 0.0  # halo only: power-law index
    halo_q: float = 1.0  # halo only: flattening
    halo_core_pc: float = 500.0  # halo only: core radius (our softening)
    sigma_kms: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (R, phi, z)
    v_asym_kms: float = 0.0  # mean lag behind the circular speed (negative)
    feh_mean: float = 0.0
    feh_sigma: float = 0.1
    age_gyr: tuple[float, float] = (0.1, 10.0)  # uniform in [lo, hi]

    def density(self, R: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Number density at Galactocentric (R, z) in pc, relative to the thin disk at the Sun."""
        if self.kind == "disk":
            L, H = self.scale_length_pc, self.scale_height_pc
            return self.norm * np.exp(-(R - R0_PC) / L - np.abs(z) / H)
        r_eff = np.sqrt(R**2 + (z / self.halo_q) ** 2 + self.halo_core_pc**2)
        return self.norm * (R0_PC / r_eff) ** self.halo_n

    @property
    def mean_vphi_kms(self) -> float:
        """Mean azimuthal velocity: circular speed plus the (negative) asymmetric drift."""
        return V_CIRC_KMS + self.v_asym_kms


THIN = Population(
    "thin", "disk", 1.0, scale_height_pc=300.0, scale_length_pc=2600.0,
    sigma_kms=(35.0, 20.0, 16.0), v_asym_kms=-15.0, feh_mean=-0.14, feh_sigma=0.19,
    age_gyr=(0.1, 10.0),
)
THICK = Population(
    "thick", "disk", 0.12, scale_height_pc=900.0, scale_length_pc=3600.0,
    sigma_kms=(67.0, 38.0, 35.0), v_asym_kms=-46.0, feh_mean=-0.6, feh_sigma=0.3,
    age_gyr=(10.0, 12.0),
)
HALO = Population(
    "halo", "halo", 0.0051, halo_n=2.77, halo_q=0.64, halo_core_pc=500.0,
    sigma_kms=(160.0, 90.0, 90.0), v_asym_kms=-220.0, feh_mean=-1.46, feh_sigma=0.5,
    age_gyr=(12.0, 13.5),
)

#: The populations, in the order of their integer codes.
POPULATIONS: tuple[Population, ...] = (THIN, THICK, HALO)
POPULATION_NAMES: tuple[str, ...] = tuple(p.name for p in POPULATIONS)


def sun_velocity() -> np.ndarray:
    """The Sun's Galactocentric velocity (vx, vy, vz), km/s: rotation plus peculiar motion."""
    U, V, W = SOLAR_PECULIAR_KMS
    return np.array([U, V_CIRC_KMS + V, W])


def galactocentric(nx, ny, nz, d_pc):
    """Galactocentric Cartesian position (pc) of a star at distance ``d_pc`` along (nx, ny, nz)."""
    return d_pc * nx - R0_PC, d_pc * ny, d_pc * nz + Z_SUN_PC


def extinction_v(d_pc: np.ndarray, sin_b: np.ndarray) -> np.ndarray:
    """A_V (mag) to distance ``d_pc`` through an exponential dust layer centred on the Sun's plane."""
    s = np.abs(sin_b)
    h = DUST_SCALE_HEIGHT_PC
    path = d_pc * s / h
    # h/|sin b| (1 - exp(-d |sin b| / h)), -> d as sin b -> 0
    small = path < 1e-6
    with np.errstate(divide="ignore", invalid="ignore"):
        col = np.where(small, d_pc, -np.expm1(-path) * h / np.where(small, 1.0, s))
    return DUST_AV_PER_PC * col


# ---- Equatorial <-> Galactic (ICRS; Hipparcos vol. 1, sec. 1.5.3, the matrix A_G) ----
_A_G = np.array(
    [
        [-0.0548755604162154, -0.8734370902348850, -0.4838350155487132],
        [+0.4941094278755837, -0.4448296299600112, +0.7469822444972189],
        [-0.8676661490190047, -0.1980763734312015, +0.4559837761750669],
    ]
)


def sin_dec(nx, ny, nz):
    """sin(dec) of Galactic unit vectors (the z component of the ICRS vector)."""
    return _A_G[0, 2] * nx + _A_G[1, 2] * ny + _A_G[2, 2] * nz
