"""The methods and definitions appendix (shared by the HTML and PDF reports)."""

from __future__ import annotations

from pipelines.settings import Settings


def methods_paragraphs(settings: Settings) -> list[str]:
    k = settings.min_cell_size
    return [
        "Episodes of care are counted from their referral date; sessions and pain ratings from the "
        "dates they were recorded. Every figure uses only records dated on or before the Sunday that "
        "ends the report's ISO week, so re-running an old week reproduces it.",
        "Baseline is the 0-10 pain rating taken before the first session. Outcome ratings are the "
        "pre-session ratings of later sessions and follow-up ratings after at least one session; the "
        "final rating is the last of them. Ratings taken right after a session (post) are used only "
        "for immediate relief. Episodes without sessions, without a baseline, with no pain at "
        "baseline or without an outcome rating are counted but not analysed.",
        f"A responder's pain fell by at least {settings.responder_30_threshold:g}% (moderately important) "
        f"or {settings.responder_50_threshold:g}% (substantially important) from baseline "
        "(Farrar et al., Pain 2001; IMMPACT, Dworkin et al., J Pain 2008).",
        "Sessions to response is the number of sessions after which the patient's pain had first "
        f"fallen by {settings.response_threshold:g}%. Patients who stop, or are still in treatment, before "
        "responding are censored at their last rating, and the share improved by each session is a "
        "Kaplan-Meier estimate (Kaplan & Meier 1958; as computed by lifelines), with pointwise 95% bands by "
        "Greenwood's variance on the log(-log) scale. 'Not reached' means fewer than half had "
        "responded within the sessions observed.",
        "Mean change has a Student-t 95% interval; responder rates have Wilson score intervals "
        "(Wilson 1927). p-values are two-sided Wilcoxon signed-rank tests of change against zero, and "
        "q-values adjust them across conditions by Benjamini-Hochberg (1995). The standardised "
        "response mean is mean change divided by its standard deviation.",
        "Clinics are compared with funnel plots (Spiegelhalter, Stat Med 2005): each clinic's "
        "responder rate against the pooled rate, with 95% and 99.8% limits for its number of "
        "patients. A clinic outside the 99.8% limits merits a look at its case mix and data; "
        "clinics are never ranked.",
        f"Privacy: counts from 1 to {k - 1} are shown as <{k}, statistics over fewer than {k} patients "
        f"are left blank (the CMS cell-size rule), and where a total is shown beside its parts a "
        "further count is hidden ('—') so that no small count can be worked out by subtraction. "
        "No therapist-level figures are published. The report holds no names or record numbers. "
        "The data-quality section counts export files and rows, not patients, and shows them in full "
        "so that staff can correct an export.",
        "These are observational clinic data without a control group: improvement includes natural "
        "recovery and regression to the mean, and differences between conditions or clinics may "
        "reflect case mix.",
    ]
