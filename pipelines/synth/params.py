"""Every number the synthetic demo-data generator uses, each with where it comes from.

The data is made up to *exercise* the pipeline (CONTRACT.md, METRICS.md), not to
estimate anything. Numbers are anchored on published massage trials where such a trial
exists, and are otherwise modelling assumptions, marked ``ASSUMPTION``. Trial figures
were written down from the papers' abstracts; none of the trials measured exactly what
a clinic records (a 0-10 pain NRS before and after every session), so even the
"anchored" numbers are translated by judgement onto that scale.

Key references (short names used below):

- Cherkin 2011: Cherkin DC et al. A comparison of the effects of 2 types of massage and
  usual care on chronic low back pain. Ann Intern Med 2011;155(1):1-9. 401 patients,
  10 treatments over 10 weeks; at 10 weeks symptom bothersomeness (0-10) was 1.4-1.7
  points lower than usual care, RDQ 2.5-2.9 points lower; symptom benefits did not
  persist at 52 weeks.
- Cherkin 2001: Cherkin DC et al. Arch Intern Med 2001;161:1081-8 (massage vs
  acupuncture vs self-care for LBP): baseline bothersomeness mean about 6.2 / 10.
- Sherman 2014: Sherman KJ et al. Five-week outcomes from a dosing trial of therapeutic
  massage for chronic neck pain. Ann Fam Med 2014;12(2):112-20. 4 weeks of 30-min
  visits 2-3x/week or 60-min visits 1-3x/week; only 60-min visits 2-3x/week beat the
  wait list (>=30% pain improvement RR 2.3-2.7).
- Moyer 2004: Moyer CA, Rounds J, Hannum JW. A meta-analysis of massage therapy
  research. Psychol Bull 2004;130(1):3-18. NOTE: single applications did *not*
  significantly reduce "immediate assessment of pain" against controls; multiple
  applications reduced delayed assessment of pain. So Moyer does not give the size of
  the pre/post drop; it is a reason to treat that drop as mostly non-specific.
- Adams 2010: Adams R, White B, Beckett C. The effects of massage therapy on pain
  management in the acute care setting. Int J Ther Massage Bodywork 2010;3(1):4-11.
  Uncontrolled pre/post: mean pain 5.18 before, 2.33 after a ~30-min massage (-2.85
  points, -55%). This is the anchor for the within-session relief.
- Field 2004 (CTS): Field T et al. J Bodyw Mov Ther 2004;8:9-14, 16 adults, 4 weeks,
  weekly therapist massage plus daily self-massage; less pain.
- Field 1999 (prenatal): Field T et al. J Psychosom Obstet Gynaecol 1999;20(1):31-8,
  20-min sessions twice a week for 5 weeks; less back pain.
- Hernandez-Reif 1998 (MS): J Bodyw Mov Ther 1998, massage twice a week for 5 weeks.
- Hernandez-Reif 2002 (PD): J Bodyw Mov Ther 2002;6(3):177-82, 30-min massage twice a
  week for 5 weeks (10 sessions); pain was not a primary outcome.
- Quinn 2002: Quinn C et al. Am J Public Health 2002;92(10):1657-61, chronic tension
  headache, 30-min massage twice a week for 4 weeks; frequency fell, intensity did not.
- Perlman 2006 / 2012: Arch Intern Med 2006;166:2533-8 (knee OA, 2x/week for 4 weeks
  then weekly for 4 weeks; VAS pain -19/100 mm); PLoS One 2012;7:e30248 (dose finding,
  60 min once weekly for 8 weeks chosen as the practical dose).
- Mitchinson 2007: Arch Surg 2007;142(12):1158-67, post-operative back massage,
  short-term pre/post drops and a faster decline of pain over the first 4 days.
- Farrar 2001 / Dworkin 2008 (IMMPACT): 30% / 50% reductions are moderately /
  substantially important (used by METRICS.md; they shape the response targets here).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------
# Calendar
# ---------------------------------------------------------------------------------------

#: Default "today" (the run date of the demo exports). Fixed, never the wall clock, so the
#: same seed always gives the same bytes. A Sunday, so the last weekly export is a full
#: ISO week (2026-W47). ASSUMPTION (choice of the project).
DEFAULT_TODAY = dt.date(2026, 11, 22)

#: Referrals spread over about the last 15 months before today. ASSUMPTION (the brief
#: asks for 12-18 months).
DATA_SPAN_DAYS = 456

#: Referral volume grows linearly over the span: the last day sees (1 + growth) times
#: the referrals of the first. ASSUMPTION (a programme that is growing).
REFERRAL_GROWTH = 0.4

#: Share of referrals dated on a weekend that are moved to a weekday of the same week
#: (clinic paperwork happens on weekdays). ASSUMPTION.
WEEKEND_REFERRAL_MOVE = 0.9

# ---------------------------------------------------------------------------------------
# Clinics and therapists (all ASSUMPTION: a plausible regional network)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clinic:
    clinic_id: str
    share: float  # share of all episodes (normalised over clinics)
    therapists: int
    #: multiplier on the patient's expected improvement: "modest clinic effects", so the
    #: funnel plots (Spiegelhalter 2005) show scatter, mostly within the 95% limits.
    effect: float
    #: multiplier on the per-session dropout hazard
    dropout: float
    #: days before today the clinic started referring (None: the whole span)
    started_days_ago: int | None = None


CLINICS: tuple[Clinic, ...] = (
    Clinic("C01", 0.26, 9, 1.00, 1.00),
    Clinic("C02", 0.20, 7, 1.06, 0.90),
    Clinic("C03", 0.16, 6, 0.95, 1.10),
    Clinic("C04", 0.12, 4, 1.10, 0.85),
    Clinic("C05", 0.11, 4, 0.90, 1.20),
    Clinic("C06", 0.09, 3, 1.00, 1.00),
    # a small clinic that joined the programme about 7 months before today
    Clinic("C07", 0.06, 2, 0.92, 1.15, started_days_ago=215),
)

#: Share of sessions given by another therapist of the clinic than the episode's own
#: (holidays, sick leave). ASSUMPTION.
COVER_THERAPIST_RATE = 0.12

# ---------------------------------------------------------------------------------------
# Patients
# ---------------------------------------------------------------------------------------

#: Episodes per patient within the span: P(1), P(2), P(3). ASSUMPTION (re-referrals
#: are a minority).
EPISODES_PER_PATIENT = (0.86, 0.11, 0.03)

#: A patient's later episode repeats the first one's condition with this probability
#: (recurrence); otherwise it is drawn from the prevalence, leaving out the conditions
#: below whose demographics are specific. ASSUMPTION.
REPEAT_CONDITION = 0.5
NOT_REDRAWN = ("prenatal", "multiple_sclerosis", "parkinsons")

AGE_BANDS = ("0-17", "18-29", "30-44", "45-59", "60-74", "75+")
SEXES = ("F", "M", "X", "U")
CHRONICITIES = ("acute", "subacute", "chronic")

#: Age-band distribution of an ordinary referral. ASSUMPTION: massage users are mostly
#: middle-aged adults (surveys of US massage users; no single source used).
AGE_GENERAL = (0.02, 0.12, 0.27, 0.31, 0.21, 0.07)

#: Sex distribution (F, M, X, U) of an ordinary referral. ASSUMPTION: users of massage
#: skew female; X (non-binary) and U (not recorded) are rare.
SEX_GENERAL = (0.62, 0.36, 0.005, 0.015)

# Missing optional values in episodes (ASSUMPTION: typical clinic data entry gaps).
MISSING_PRESCRIBED = 0.06
MISSING_AGE_BAND = 0.03
MISSING_SEX = 0.02
MISSING_CHRONICITY = 0.10

#: Share of episodes written with a condition alias or odd case/spacing rather than the
#: code (aliases from pipelines/reference/conditions.csv). ASSUMPTION.
CONDITION_ALIAS_RATE = 0.15

# ---------------------------------------------------------------------------------------
# Conditions
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    code: str
    #: relative prevalence among episodes (normalised over conditions)
    prevalence: float
    #: baseline (session-1 pre) pain, NRS 0-10: mean and between-patient sd
    baseline_mean: float
    baseline_sd: float
    #: expected plateau improvement, as a fraction of baseline, reached after many
    #: sessions; between-patient sd of that fraction is IMPROVEMENT_SD
    improvement: float
    #: rate per treatment: after t treatments a patient has reached 1 - exp(-rate*t) of
    #: their plateau. With improvement m, a 30% response needs
    #: t = -ln(1 - 0.3/m) / rate sessions, so rate and m set sessions-to-response.
    rate: float
    #: within-session relief, as a fraction of the pre score (post = pre * (1 - f))
    relief: float
    #: prescribed sessions: values and their weights
    prescribed: tuple[int, ...]
    prescribed_w: tuple[float, ...]
    #: sessions per week: P(1), P(2), P(3)
    per_week: tuple[float, float, float]
    #: session length: weights over DURATIONS
    duration_w: tuple[float, ...]
    #: per-session hazard of stopping early (before the prescription is used up)
    dropout: float
    #: chronicity: P(acute), P(subacute), P(chronic)
    chronicity: tuple[float, float, float]
    age: tuple[float, ...] = AGE_GENERAL
    sex: tuple[float, float, float, float] = SEX_GENERAL


#: session lengths in minutes (contract: 10..180)
DURATIONS = (20, 30, 45, 60, 90)

#: Prevalence ordering: back and neck complaints are the commonest reasons for massage
#: visits in practice surveys (e.g. Cherkin DC et al. J Am Board Fam Pract 2002;15:463-72,
#: cited from memory, not re-checked); the exact shares, and the rarity of MS /
#: Parkinson's referrals, are ASSUMPTION.
CONDITIONS: tuple[Condition, ...] = (
    Condition(
        # Cherkin 2011: 10 weekly treatments; bothersomeness improved ~1.5 points more
        # than usual care (which itself improves), so about 40% from a baseline near 6
        # (Cherkin 2001: 6.2). Mostly 60-min sessions, mostly weekly.
        "low_back_pain", 0.24, 6.0, 1.8, 0.45, 0.22, 0.55,
        (6, 8, 10, 12), (0.15, 0.20, 0.45, 0.20), (0.70, 0.25, 0.05),
        (0.00, 0.10, 0.25, 0.60, 0.05), 0.045, (0.20, 0.20, 0.60),
    ),
    Condition(
        # Sherman 2014: 4 weeks, 2-3 visits a week, 30 or 60 min; the 60-min multi-visit
        # arms gave clinically meaningful (>=30%) pain improvement 2.3-2.7x as often as
        # the wait list. Baseline NRS ~5-6 (ASSUMPTION from the trial's population).
        "neck_pain", 0.15, 5.5, 1.8, 0.42, 0.25, 0.55,
        (6, 8, 10, 12), (0.10, 0.25, 0.30, 0.35), (0.35, 0.45, 0.20),
        (0.00, 0.30, 0.10, 0.60, 0.00), 0.045, (0.20, 0.20, 0.60),
    ),
    Condition(
        # ASSUMPTION, by analogy with neck pain: milder, faster, shorter courses.
        "upper_back_tension", 0.10, 5.0, 1.7, 0.45, 0.35, 0.57,
        (4, 6, 8, 10), (0.10, 0.40, 0.35, 0.15), (0.60, 0.35, 0.05),
        (0.00, 0.30, 0.30, 0.40, 0.00), 0.055, (0.30, 0.30, 0.40),
    ),
    Condition(
        # Quinn 2002: 30-min massage twice a week for 4 weeks (8 sessions); frequency fell,
        # intensity did not, so a modest improvement. Younger patients. Rate ASSUMPTION.
        "headache_migraine", 0.08, 6.0, 1.9, 0.35, 0.30, 0.55,
        (6, 8, 10, 12), (0.20, 0.45, 0.25, 0.10), (0.40, 0.55, 0.05),
        (0.00, 0.50, 0.30, 0.20, 0.00), 0.055, (0.10, 0.20, 0.70),
        age=(0.04, 0.22, 0.36, 0.27, 0.09, 0.02), sex=(0.72, 0.26, 0.005, 0.015),
    ),
    Condition(
        # Field 2004: 4 weeks, weekly therapist massage (+ daily self-massage), less pain;
        # tiny trial (n=16), so the size is ASSUMPTION. Short sessions.
        "carpal_tunnel", 0.035, 5.5, 1.8, 0.40, 0.25, 0.53,
        (4, 6, 8, 12), (0.30, 0.30, 0.25, 0.15), (0.60, 0.35, 0.05),
        (0.00, 0.50, 0.30, 0.20, 0.00), 0.050, (0.10, 0.30, 0.60),
        age=(0.00, 0.08, 0.30, 0.38, 0.19, 0.05), sex=(0.70, 0.28, 0.005, 0.015),
    ),
    Condition(
        # Perlman 2006: 2x/week for 4 weeks then weekly for 4 (12 sessions), VAS pain
        # -19/100 mm, i.e. roughly 30% of a baseline near 6; Perlman 2012: 60 min weekly
        # for 8 weeks. Slow rate: ASSUMPTION. Older patients.
        "arthritis", 0.06, 6.0, 1.7, 0.30, 0.15, 0.50,
        (8, 10, 12), (0.50, 0.25, 0.25), (0.45, 0.50, 0.05),
        (0.00, 0.20, 0.20, 0.60, 0.00), 0.040, (0.02, 0.08, 0.90),
        age=(0.00, 0.01, 0.06, 0.28, 0.42, 0.23), sex=(0.66, 0.32, 0.005, 0.015),
    ),
    Condition(
        # ASSUMPTION: little trial evidence for massage in diabetic neuropathic pain; a
        # small, slow improvement and a smaller within-session relief.
        "diabetes_related_pain", 0.02, 6.2, 1.7, 0.20, 0.12, 0.45,
        (6, 8, 10, 12), (0.25, 0.25, 0.25, 0.25), (0.70, 0.30, 0.00),
        (0.00, 0.30, 0.30, 0.40, 0.00), 0.060, (0.02, 0.08, 0.90),
        age=(0.00, 0.02, 0.10, 0.33, 0.38, 0.17), sex=(0.48, 0.50, 0.005, 0.015),
    ),
    Condition(
        # Mitchinson 2007: short-term pre/post drops and faster decline of post-operative
        # pain; recovery after surgery also improves pain by itself, so a large, fast
        # improvement (ASSUMPTION). Short sessions, short courses, mostly acute.
        "post_surgical", 0.07, 6.5, 1.8, 0.55, 0.35, 0.60,
        (4, 6, 8, 10), (0.20, 0.35, 0.30, 0.15), (0.40, 0.50, 0.10),
        (0.15, 0.40, 0.25, 0.20, 0.00), 0.070, (0.60, 0.35, 0.05),
        age=(0.01, 0.06, 0.17, 0.30, 0.32, 0.14), sex=(0.55, 0.43, 0.005, 0.015),
    ),
    Condition(
        # ASSUMPTION: acute soft-tissue injuries resolve quickly; young, more male
        # patients; people stop once they feel better (higher dropout).
        "sports_injury", 0.08, 5.8, 1.8, 0.55, 0.35, 0.55,
        (3, 4, 6, 8), (0.15, 0.30, 0.35, 0.20), (0.40, 0.50, 0.10),
        (0.00, 0.30, 0.30, 0.35, 0.05), 0.080, (0.60, 0.30, 0.10),
        age=(0.12, 0.35, 0.30, 0.16, 0.06, 0.01), sex=(0.42, 0.56, 0.005, 0.015),
    ),
    Condition(
        # Field 1999: 20-min sessions twice a week for 5 weeks, less back pain by the end.
        # Size ASSUMPTION. High dropout: the birth ends courses. Women 18-44.
        "prenatal", 0.035, 5.0, 1.8, 0.35, 0.30, 0.55,
        (6, 8, 10), (0.30, 0.30, 0.40), (0.40, 0.60, 0.00),
        (0.20, 0.30, 0.30, 0.20, 0.00), 0.090, (0.30, 0.40, 0.30),
        age=(0.00, 0.35, 0.62, 0.03, 0.00, 0.00), sex=(1.0, 0.0, 0.0, 0.0),
    ),
    Condition(
        # Hernandez-Reif 1998: twice a week for 5 weeks; pain not the primary outcome, so
        # a small, slow improvement is ASSUMPTION. Rare, long courses, low dropout.
        "multiple_sclerosis", 0.010, 5.5, 1.9, 0.25, 0.12, 0.45,
        (10, 12, 20), (0.50, 0.30, 0.20), (0.30, 0.70, 0.00),
        (0.00, 0.40, 0.30, 0.30, 0.00), 0.040, (0.05, 0.05, 0.90),
        age=(0.00, 0.08, 0.35, 0.38, 0.16, 0.03), sex=(0.72, 0.26, 0.005, 0.015),
    ),
    Condition(
        # Hernandez-Reif 2002: 30-min massage twice a week for 5 weeks (10 sessions);
        # pain not measured, so the small, slow improvement is ASSUMPTION. Rarest.
        "parkinsons", 0.008, 5.0, 1.9, 0.20, 0.10, 0.45,
        (10, 12, 20), (0.50, 0.30, 0.20), (0.30, 0.70, 0.00),
        (0.00, 0.60, 0.20, 0.20, 0.00), 0.040, (0.02, 0.03, 0.95),
        age=(0.00, 0.00, 0.02, 0.15, 0.50, 0.33), sex=(0.40, 0.58, 0.005, 0.015),
    ),
    Condition(
        # ASSUMPTION: referrals for stress with somatic pain; lower baseline pain, wider
        # spread (more baseline-0 and low scores), larger within-session relief.
        "ptsd_stress", 0.05, 4.5, 2.2, 0.30, 0.25, 0.60,
        (6, 8, 10, 12), (0.20, 0.30, 0.30, 0.20), (0.70, 0.30, 0.00),
        (0.00, 0.20, 0.30, 0.50, 0.00), 0.070, (0.10, 0.20, 0.70),
        age=(0.02, 0.25, 0.38, 0.24, 0.09, 0.02), sex=(0.60, 0.38, 0.005, 0.015),
    ),
    Condition(
        # ASSUMPTION: fibromyalgia and other chronic pain respond modestly and slowly.
        "other_chronic_pain", 0.07, 6.5, 1.7, 0.25, 0.15, 0.50,
        (6, 8, 10, 12), (0.20, 0.30, 0.30, 0.20), (0.65, 0.35, 0.00),
        (0.00, 0.20, 0.30, 0.50, 0.00), 0.060, (0.03, 0.07, 0.90),
    ),
)

CONDITION_CODES = tuple(c.code for c in CONDITIONS)

# ---------------------------------------------------------------------------------------
# Pain model (per patient, per session)
# ---------------------------------------------------------------------------------------

#: Between-patient sd of the plateau improvement fraction. ASSUMPTION, chosen so that a
#: sizeable minority do not reach 30% (non-responders), as in every trial above.
IMPROVEMENT_SD = 0.25
#: bounds on a patient's plateau improvement fraction (negative: gets worse)
IMPROVEMENT_MIN, IMPROVEMENT_MAX = -0.20, 0.95
#: Between-patient spread of the rate: rate * lognormal(0, RATE_LOG_SD). ASSUMPTION.
RATE_LOG_SD = 0.35
#: Session-to-session noise on the pre score, NRS points. ASSUMPTION (the NRS's
#: test-retest noise is around one point).
PRE_NOISE_SD = 0.8
#: Between-patient sd of the within-session relief fraction, and session-to-session sd.
#: Condition means (``Condition.relief``) are 0.45-0.60 of the pre score: Adams 2010 saw
#: -55% (5.18 -> 2.33) in inpatients; the slower neurological / neuropathic conditions
#: are given less (ASSUMPTION). With pre scores of 4-6 over a course this gives the
#: intended ~2-3 point mean immediate relief. Moyer 2004 found no *specific* immediate
#: effect against controls: this drop is what clinics record, not a causal effect.
RELIEF_PATIENT_SD = 0.08
RELIEF_SESSION_SD = 0.12
RELIEF_MIN, RELIEF_MAX = -0.05, 0.90
#: Share of episodes whose baseline is 0 (nothing to improve; METRICS excludes them).
#: ASSUMPTION.
BASELINE_ZERO_RATE = 0.005
#: Share of recorded scores given in half points (e.g. 6.5) rather than whole ones.
#: ASSUMPTION.
HALF_POINT_RATE = 0.06

# ---------------------------------------------------------------------------------------
# Attendance
# ---------------------------------------------------------------------------------------

#: Episodes referred but never attended (no sessions at all). ASSUMPTION.
NO_SHOW_RATE = 0.04
#: Days from referral to the first session: gamma(shape, scale), rounded up; mean ~8 d.
#: ASSUMPTION.
FIRST_SESSION_LAG = (1.5, 5.5)
#: Patients with a low plateau improvement (< NONRESPONDER_BELOW) drop out this many
#: times faster ("many patients stop before they improve"). ASSUMPTION.
NONRESPONDER_BELOW = 0.15
NONRESPONDER_DROPOUT_FACTOR = 1.8
#: Completers who are given extra sessions (a renewed prescription) and how many.
#: ASSUMPTION; makes adherence > 1 possible (METRICS does not cap it).
EXTENSION_RATE = 0.10
EXTENSION_SESSIONS = (2, 6)
#: Gaps between sessions in days, by sessions per week (1, 2, 3): a base gap plus a
#: uniform jitter; a missed appointment adds one more base gap. ASSUMPTION.
GAP_BASE = (7, 3, 2)
GAP_JITTER = ((-1, 1), (0, 1), (0, 1))
MISSED_APPOINTMENT_RATE = 0.08
#: Sessions that fall on a Saturday stay there with this probability (else Monday);
#: Sunday sessions always move to Monday. ASSUMPTION.
SATURDAY_KEPT = 0.3
#: A session's length differs from the episode's usual length. ASSUMPTION.
DURATION_VARIES_RATE = 0.10
MISSING_DURATION = 0.03

# ---------------------------------------------------------------------------------------
# Recording gaps in pain scores (ASSUMPTION: busy clinics forget ratings)
# ---------------------------------------------------------------------------------------

MISSING_PRE_FIRST = 0.04  # no baseline: METRICS "no baseline" exclusion
MISSING_PRE = 0.03  # later sessions
MISSING_POST = 0.06
#: pre/post recorded_on: left empty, or entered the next day (informative only).
RECORDED_ON_EMPTY = 0.35
RECORDED_ON_NEXT_DAY = 0.02

# ---------------------------------------------------------------------------------------
# Follow-up ratings
# ---------------------------------------------------------------------------------------

#: Finished episodes (not cut short by today) that get a follow-up call, and when:
#: uniform days after the last session. ASSUMPTION (a clinic phone call 3-10 weeks on;
#: the trials above followed up at 10-52 weeks).
FOLLOWUP_RATE = 0.30
FOLLOWUP_DAYS = (21, 70)
#: A second follow-up some months later, and its gap after the first.
SECOND_FOLLOWUP_RATE = 0.20
SECOND_FOLLOWUP_DAYS = (60, 120)
#: Share of the in-treatment improvement kept at follow-up: normal(mean, sd), for the
#: first and second follow-up. Cherkin 2011: symptom benefits faded by 52 weeks.
#: ASSUMPTION for the numbers.
RETENTION_FIRST = (0.85, 0.20)
RETENTION_SECOND = (0.70, 0.25)
FOLLOWUP_NOISE_SD = 1.0
#: Episodes without any session that still get a follow-up call (t = 0: not an outcome
#: observation in METRICS), days after referral.
NO_SHOW_FOLLOWUP_RATE = 0.05
NO_SHOW_FOLLOWUP_DAYS = (30, 90)

# ---------------------------------------------------------------------------------------
# Export files (how the clinics' weekly exports behave). All ASSUMPTION.
# ---------------------------------------------------------------------------------------

#: Each weekly export repeats the records dated in the last OVERLAP_DAYS days of the week
#: before (Friday-Sunday): identical duplicates.
OVERLAP_DAYS = 3
#: Share of records whose first export was wrong and which the next week's export
#: corrects (same key, changed content: superseded).
CORRECTION_RATE = {"episodes": 0.010, "sessions": 0.003, "pain_scores": 0.002}
#: Share of repeated (overlap) rows written in another but equivalent spelling
#: (``7`` vs ``7.0``, condition case/spacing): duplicates after normalisation.
RESPELL_RATE = 0.02
#: Deliberately invalid rows, per kind of fault, per 100,000 valid records of the table
#: (at least one of each kind). About 0.05% of all rows in total.
BAD_ROWS_PER_100K = 10
#: A condition that is not in the vocabulary (a bad row).
UNKNOWN_CONDITION = "tennis elbow"
