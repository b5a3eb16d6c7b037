"""What a SQL string would do when PostgreSQL runs it, as plain data, failing closed.

``analyze(sql)`` returns an :class:`Analysis`: one :class:`Statement` per statement
of the input, each with its class (read, write, DDL, ...), its command, the tables
it reads and writes, whether an UPDATE/DELETE/MERGE has a WHERE that really
restricts rows, the functions it calls, the settings it changes, what it runs
inside itself (``nested``) and, for anything not understood, ``UNKNOWN`` with a
reason.  The guardrails decide on that data; nothing here decides.

This package is the only importer of sqlglot.  sqlglot is a good parser but not
PostgreSQL's, so everything it produces is checked before it is believed.  One
statement text goes through the modules in this order:

* ``budgets``     the limits checked before any work (length, tokens, depth, CPU).
* ``lexing``      sqlglot's PostgreSQL tokenizer, re-checked gap by gap against
                  PostgreSQL's own lexical rules; splitting at top-level semicolons;
                  the token cursor the statement grammars read with.
* ``classify``    the driver (:func:`analyze_uncached`) and the ``_Analyzer``:
                  dispatch on the leading keyword, the statements with a small
                  grammar of their own read from the tokens, the rest parsed by
                  sqlglot and checked against the type the keyword promises.
* ``facts``       one pass over a sqlglot tree, cross-checked against the tokens:
                  tables, calls, locks, settings written, nested statements.
* ``predicates``  whether a WHERE restricts rows (abstract evaluation).
* ``model``       the results: :class:`Statement`, :class:`Analysis` and their enums.
* ``names``       PostgreSQL names: folding, :func:`parse_name`, ``search_path``.
* ``cache``       :func:`analyze` itself: the exact and the shape caches in front
                  of :func:`analyze_uncached`.

Beside the classification, masking reads texts through:

* ``lineage``     :func:`result_lineage`, the base columns each result column may
                  be computed from.
* ``uses``        :func:`predicate_columns`, :func:`passed_on_columns` and
                  :func:`computed_uses`, where columns are filtered on, passed on
                  or computed with.

Callers import from the package (``from server.gateway.sqlcheck import analyze``);
the modules' underscored names are theirs.
"""

from server.gateway.sqlcheck.budgets import DEFAULT_MAX_LEN, DEFAULT_TIME_BUDGET, MAX_TEXT
from server.gateway.sqlcheck.cache import analysis_cached, analyze, cache_clear, remember
from server.gateway.sqlcheck.classify import (
    analyze_function_call,
    analyze_uncached,
    failed_analysis,
    over_budget_analysis,
)
from server.gateway.sqlcheck.lexing import dotted_names, skip_blanks, statement_ends
from server.gateway.sqlcheck.lineage import Lineage, result_lineage, result_lineage_of
from server.gateway.sqlcheck.model import (
    Analysis,
    CopyEndpoint,
    CopySpec,
    Execution,
    Feature,
    Statement,
    StatementClass,
)
from server.gateway.sqlcheck.names import (
    ANY_COLUMN,
    Name,
    parse_name,
    parse_search_path,
    relation_schemas,
)
from server.gateway.sqlcheck.uses import (
    COMPUTED,
    PREDICATE,
    computed_uses,
    passed_on_columns,
    predicate_columns,
)

__all__ = [
    "ANY_COLUMN",
    "COMPUTED",
    "DEFAULT_MAX_LEN",
    "DEFAULT_TIME_BUDGET",
    "MAX_TEXT",
    "PREDICATE",
    "Analysis",
    "CopyEndpoint",
    "CopySpec",
    "Execution",
    "Feature",
    "Lineage",
    "Name",
    "Statement",
    "StatementClass",
    "analysis_cached",
    "analyze",
    "analyze_function_call",
    "analyze_uncached",
    "cache_clear",
    "computed_uses",
    "dotted_names",
    "failed_analysis",
    "over_budget_analysis",
    "parse_name",
    "parse_search_path",
    "passed_on_columns",
    "predicate_columns",
    "relation_schemas",
    "remember",
    "result_lineage",
    "result_lineage_of",
    "skip_blanks",
    "statement_ends",
]
