"""The BGP side: reconciles what ExaBGP announces to the DesiredSet, safely (docs/bgp.md).

``planner`` and ``policy`` decide what may be announced, ``engine`` records it in the
``store``, and ExaBGP's process ``bridge`` drives ExaBGP with ``reconciler`` and
``commands``; ``exabgp_conf`` and ``supervisor`` run ExaBGP; ``rpki`` checks origins.
"""
