"""Materials of seed 002's wire phantom and their complex refractive index u = delta + i beta.

Seed 002 (section 3.1) lists gold, platinum, zinc oxide and titanium dioxide with densities
"9.32, 21.45, 5.606, and 4.23 g/cm3". Gold's density is 19.32 g/cm^3; "9.32" is a dropped digit, so
:data:`MATERIALS` uses 19.32.

``periodictable.xsf.index_of_refraction`` returns n = 1 - delta - i beta (X-ray convention with
absorption in a negative imaginary part), so delta = 1 - Re n and beta = -Im n; both are positive for
every material here (Au at 5 keV: delta = 1.21e-4, beta = 2.62e-5).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Material:
    """A material of the wire phantom: chemical formula and mass density in g/cm^3.

    Parameters
    ----------
    name : str
        Its name ("gold", ...).
    formula : str
        Chemical formula, as ``periodictable`` reads it ("Au", "TiO2").
    density_g_cm3 : float
        Mass density in g/cm^3.
    """

    name: str
    formula: str
    density_g_cm3: float


#: Seed 002's four materials (gold's density corrected from the seed's typo 9.32 to 19.32 g/cm^3).
MATERIALS: tuple[Material, ...] = (
    Material("gold", "Au", 19.32),
    Material("platinum", "Pt", 21.45),
    Material("zinc oxide", "ZnO", 5.606),
    Material("titanium dioxide", "TiO2", 4.23),
)


def refractive_index(formula: str, density: float, energy_ev: float) -> tuple[float, float]:
    """(delta, beta) of ``formula`` at ``density`` g/cm^3 and photon energy ``energy_ev`` eV.

    Uses the Henke tables via ``periodictable.xsf.index_of_refraction`` (n = 1 - delta - i beta).

    Parameters
    ----------
    formula : str
        Chemical formula ("Au", "ZnO").
    density : float
        Mass density in g/cm^3, positive.
    energy_ev : float
        Photon energy in eV, positive (the Henke tables span 30 eV to 30 keV).

    Returns
    -------
    delta, beta : float
        ``1 - Re n`` and ``-Im n``.

    Raises
    ------
    InputError
        For a non-positive energy or density, an unknown formula or an energy outside the tables.
    """
    if not energy_ev > 0:
        raise InputError(f"photon energy must be positive, got {energy_ev} eV; give the energy in eV")
    if not density > 0:
        raise InputError(f"density of {formula} must be positive, got {density} g/cm^3")
    from periodictable import xsf

    try:
        n = complex(xsf.index_of_refraction(formula, density=float(density), energy=energy_ev / 1000.0))
    except Exception as exc:  # unknown formula, energy outside the Henke table range
        raise InputError(f"cannot compute the refractive index of {formula!r} at {energy_ev} eV ({exc}); "
                         "use a valid chemical formula and an energy between 30 eV and 30 keV") from exc
    return 1.0 - n.real, -n.imag
