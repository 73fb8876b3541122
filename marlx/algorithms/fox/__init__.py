"""FoX: formation-aware exploration on marlx's QMIX (Jo et al., AAAI 2024)."""
