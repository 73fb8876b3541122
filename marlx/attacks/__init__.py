"""marlx.attacks: action-time transforms between a policy's joint action and the env (see :mod:`.base`)."""

from marlx.attacks.base import (  # noqa: F401
    ATTACK_KEY, Attack, AttackContext, attack_names, check_attack_config, get_attack_class, make_attack,
    register_attack,
)
