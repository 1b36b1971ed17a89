"""The three input tables of CONTRACT.md as data: columns, types, ranges and keys."""

from __future__ import annotations

from dataclasses import dataclass

#: column-name stems that name a direct identifier (CONTRACT.md, rule 1); matched after
#: normalisation like condition values.
IDENTIFIER_COLUMNS = frozenset({
    "name", "first_name", "last_name", "full_name", "patient_name", "surname", "email",
    "e_mail", "phone", "telephone", "mobile", "address", "street", "postcode",
    "postal_code", "zip", "zip_code", "dob", "date_of_birth", "birth_date", "birthdate",
    "ssn", "social_security_number", "mrn", "medical_record_number", "insurance_number",
    "insurance_id", "nhs_number",
    # beyond CONTRACT.md's minimum list: common spellings seen in clinic systems
    "nhs_no", "zipcode", "e_mail_address", "cellphone", "passport_number",
})


def is_identifier_column(normalised: str) -> bool:
    """A column names a direct identifier when its name, or any run of its words (also with
    the words run together: post_code -> postcode), is a listed identifier: phone_number,
    patient_first_name, home_address, email_address. ``name`` alone counts only as the
    whole column name (condition_name is not an identifier)."""
    words = [w for w in normalised.split("_") if w]
    for start in range(len(words)):
        for end in range(start + 1, len(words) + 1):
            run = words[start:end]
            for candidate in ("_".join(run), "".join(run)):
                if candidate == "name" and len(words) > 1:
                    continue
                if candidate in IDENTIFIER_COLUMNS:
                    return True
    return False

#: id columns whose values must not look like an e-mail address or a phone number.
ID_COLUMNS = ("episode_id", "patient_id", "clinic_id", "session_id", "therapist_id")

AGE_BANDS = ("0-17", "18-29", "30-44", "45-59", "60-74", "75+")
SEXES = ("F", "M", "X", "U")
CHRONICITIES = ("acute", "subacute", "chronic")
TIMEPOINTS = ("pre", "post", "followup")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "id", "text", "condition", "choice", "date", "int", "number"
    required: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    upper: bool = False  # choices are upper-case (sex); otherwise lower-case


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    #: required columns a file may lack (read as empty), CONTRACT.md rule 1
    may_lack: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def required_in_file(self) -> list[str]:
        return [c.name for c in self.columns if c.required and c.name not in self.may_lack]


EPISODES = TableSpec(
    name="episodes",
    columns=(
        Column("episode_id", "id", required=True),
        Column("patient_id", "id", required=True),
        Column("clinic_id", "id", required=True),
        Column("condition", "condition", required=True),
        Column("referral_date", "date", required=True),
        Column("prescribed_sessions", "int", low=1, high=100),
        Column("age_band", "choice", choices=AGE_BANDS),
        Column("sex", "choice", choices=SEXES, upper=True),
        Column("chronicity", "choice", choices=CHRONICITIES),
    ),
    key=("episode_id",),
)

SESSIONS = TableSpec(
    name="sessions",
    columns=(
        Column("session_id", "id", required=True),
        Column("episode_id", "id", required=True),
        Column("therapist_id", "id", required=True),
        Column("session_date", "date", required=True),
        Column("duration_min", "int", low=10, high=180),
    ),
    key=("session_id",),
)

# session_id and recorded_on are conditionally required (checked by rule, not by column).
PAIN_SCORES = TableSpec(
    name="pain_scores",
    columns=(
        Column("episode_id", "id", required=True),
        Column("session_id", "id"),
        Column("timepoint", "choice", required=True, choices=TIMEPOINTS),
        Column("score", "number", required=True, low=0, high=10),
        Column("recorded_on", "date"),
    ),
    key=("session_id", "timepoint"),  # pre/post; followups use (episode_id, recorded_on)
)

TABLES: dict[str, TableSpec] = {t.name: t for t in (EPISODES, SESSIONS, PAIN_SCORES)}
TABLE_ORDER = ("episodes", "sessions", "pain_scores")


def table_for_filename(filename: str) -> str | None:
    """The table a file belongs to by its name (case-insensitive), or None (ignored)."""
    lower = filename.lower()
    if not (lower.endswith(".csv") or lower.endswith(".parquet")):
        return None
    for table in TABLE_ORDER:
        if lower.startswith(table):
            return table
    return None
