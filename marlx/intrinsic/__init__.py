"""marlx.intrinsic: intrinsic-reward components behind one interface (see :mod:`.base`)."""

from marlx.intrinsic.base import (  # noqa: F401
    INTRINSIC_KEY, IntrinsicReward, build_intrinsic, check_intrinsic_config, get_intrinsic_class,
    intrinsic_names, register_intrinsic,
)
