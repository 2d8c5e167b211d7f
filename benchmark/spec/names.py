"""Every name the threat model uses, in one place: families, attacks, budgets.

Code that lists, validates or displays an attack or family name imports it from here (through
`benchmark.spec`), so adding an attack to the threat model is one edit and a spec version.
"""

__all__ = [
    "FAMILIES", "MEASURED_FAMILIES", "FAMILY_LABELS", "WHITE_BOX_ATTACKS", "MARGIN_ATTACKS",
    "SINGLE_STEP_ATTACKS", "WHITE_BOX_DETERMINISTIC", "WHITE_BOX_RANDOMIZED", "TRANSFER_ATTACKS",
    "ADAPTIVE_ATTACK", "UNBOUNDED_DIAGNOSTIC", "BUDGETS", "NATTACK_PARAMETERIZATIONS",
    "LABEL_MODES", "INTERPOLATIONS", "DATASETS",
]

FAMILIES = ("white_box", "transfer", "adaptive")   # the three attack families, cheapest first
MEASURED_FAMILIES = ("clean", *FAMILIES)           # what a record measures, in the cascade's order
FAMILY_LABELS = {"clean": "clean", "white_box": "white-box", "transfer": "transfer", "adaptive": "NAttack"}

# The spec's white-box attack tables: the cross-entropy attacks, then the margin losses (spec v2 on;
# optional so that v1 stays readable).
WHITE_BOX_ATTACKS = ("fgsm", "step_ll", "rand_fgsm", "ifgsm", "pgd", "epgd")
MARGIN_ATTACKS = ("pgd_margin", "epgd_margin")
SINGLE_STEP_ATTACKS = ("fgsm", "step_ll", "rand_fgsm")
# What the white-box family runs: a randomized entry gets PGD with EOT (epgd, epgd_margin) instead.
WHITE_BOX_DETERMINISTIC = ("fgsm", "step_ll", "rand_fgsm", "ifgsm", "pgd", "pgd_margin")
WHITE_BOX_RANDOMIZED = ("fgsm", "step_ll", "rand_fgsm", "ifgsm", "epgd", "epgd_margin")
TRANSFER_ATTACKS = ("fgsm", "rand_fgsm", "ifgsm", "pgd")   # crafted on the held-out sources
ADAPTIVE_ATTACK = "nattack"
UNBOUNDED_DIAGNOSTIC = "pgd_unbounded"   # PGD with eps = 1: the gradient-masking diagnostic

BUDGETS = ("quick", "standard", "full")   # standard: spec v2 on; optional so that v1 stays readable
NATTACK_PARAMETERIZATIONS = ("pixel", "tanh")
LABEL_MODES = ("true", "least_likely")
INTERPOLATIONS = ("bicubic", "bilinear")
DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet")
