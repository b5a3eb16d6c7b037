"""Dynamic data masking: which result columns leave masked, and how, decided without I/O.

The policy's ``masking`` section becomes :class:`MaskingRules` for one session,
each result shape a :class:`MaskPlan`, and the plan rewrites the rows; the relay
hooks that drive this live in ``masking_relay``, the refusals before execution in
``masking_guard``.  The package by concern:

* ``rules``      :class:`MaskingRules` for one session (:func:`session_rules`, the
                 one place they are built), the target's hashing key, and what
                 each method does to a value (:func:`mask_value`, :func:`hash_value`).
* ``plans``      :func:`plan_for_row_description`: one decision per result column
                 (clear, mask or block), the formats to ask upstream for, the
                 RowDescription the client is sent.
* ``rows``       :class:`RowMasker`: DataRow rewriting, a generated loop per plan
                 and the optional C core ``server.gateway._rowmask`` (:data:`NATIVE`).
* ``screening``  the content detectors over rows, reports, notifications and
                 parameters, and the redaction of error and notice texts.
* ``copy_rows``  :class:`CopyMasker`: COPY TO STDOUT rows in text and CSV format.
* ``grants``     :func:`column_walls` / :func:`database_side_grants`: column-level
                 grants that leave masked columns out, a wall inside the database.

Callers import from the package (``from server.gateway.masking import MaskPlan``).
"""

from server.gateway.masking.copy_rows import CopyFormat, CopyMasker
from server.gateway.masking.grants import RelationWall, column_walls, database_side_grants
from server.gateway.masking.plans import (
    Action,
    FieldPlan,
    MaskPlan,
    apply_plan,
    exempted,
    expand_formats,
    masks,
    plan_for_columns,
    plan_for_row_description,
    session_notice,
)
from server.gateway.masking.rows import NATIVE, RowMasker
from server.gateway.masking.rules import (
    NO_MASKING,
    REDACTED,
    ColumnRef,
    MaskingRules,
    hash_value,
    load_key,
    mask_value,
    masking_key_problems,
    session_rules,
)
from server.gateway.masking.screening import (
    UNCHANGED,
    redact_report,
    redact_text,
    screen_notification,
    screen_parameter,
    screen_report,
    screen_row,
)

__all__ = [
    "NATIVE",
    "NO_MASKING",
    "REDACTED",
    "UNCHANGED",
    "Action",
    "ColumnRef",
    "CopyFormat",
    "CopyMasker",
    "FieldPlan",
    "MaskPlan",
    "MaskingRules",
    "RelationWall",
    "RowMasker",
    "apply_plan",
    "column_walls",
    "database_side_grants",
    "exempted",
    "expand_formats",
    "hash_value",
    "load_key",
    "mask_value",
    "masking_key_problems",
    "masks",
    "plan_for_columns",
    "plan_for_row_description",
    "redact_report",
    "redact_text",
    "screen_notification",
    "screen_parameter",
    "screen_report",
    "screen_row",
    "session_notice",
    "session_rules",
]
