"""The attacks of the threat model: gradient (white-box), transfer from held-out sources, NAttack."""
