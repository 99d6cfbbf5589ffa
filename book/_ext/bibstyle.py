"""An author-year bibliography style for sphinxcontrib-bibtex.

The book cites author-year in the text ("Gu et al. (2022)"); this style makes
the bibliography match: entries labelled "Gu et al. 2022", sorted by author,
year and title. Registered with pybtex as ``authoryear`` and selected by
``bibtex_default_style`` in _config.yml.
"""

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting.author_year_title import SortingStyle


def _surname(person) -> str:
    return " ".join(person.prelast_names + person.last_names).replace("{", "").replace("}", "")


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        labels = []
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            if not people:
                name = entry.fields.get("organization", entry.key)
            elif len(people) == 1:
                name = _surname(people[0])
            elif len(people) == 2:
                name = f"{_surname(people[0])} and {_surname(people[1])}"
            else:
                name = f"{_surname(people[0])} et al."
            labels.append(f"{name} {entry.fields.get('year', 'n.d.')}")
        # Two entries with the same label get a, b, ... so labels stay unique.
        counts, seen = Counter(labels), Counter()
        for label in labels:
            if counts[label] > 1:
                seen[label] += 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
            else:
                yield label


class AuthorYearStyle(UnsrtStyle):
    default_label_style = AuthorYearLabels
    default_sorting_style = SortingStyle


register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)


def setup(app):
    return {"parallel_read_safe": True, "parallel_write_safe": True}
