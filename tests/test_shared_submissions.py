"""The lab grading tests put several ordinary answers in one submission (tests/lab_grading.py): check the grouping."""
from tests.lab_grading import Answer, share_submissions


def _answers():
    return {"a": Answer({"f": "x"}, "test_f", 0), "b": Answer({"f": "y"}, "test_f", 0),
            "c": Answer({"g": "z"}, "test_g", 0), "d": Answer({"h": "w"}, "test_f", 0),
            "e": Answer({"g": "v", "k": "u"}, "test_k", 1.5)}


def test_no_two_answers_of_a_submission_share_a_cell_or_a_question():
    answers = _answers()
    shared = share_submissions(answers)
    assert sorted(a for group in shared.values() for a in group) == sorted(answers)
    for group in shared.values():
        for i, one in enumerate(group):
            for other in group[i + 1:]:
                assert answers[one].question != answers[other].question, (one, other)
                assert not set(answers[one].cells) & set(answers[other].cells), (one, other)


def test_the_grouping_is_first_fit_by_name():
    # a, c together; b cannot join (cell f, question test_f); d shares test_f with a and b; e shares cell g with c
    assert share_submissions(_answers()) == {"answers_1": ["a", "c"], "answers_2": ["b", "e"], "answers_3": ["d"]}


def test_an_answer_alone_shares_with_none():
    answers = {**_answers(), "f": Answer({"m": "x"}, "test_m", 0, alone=True), "g": Answer({"n": "y"}, "test_n", 0)}
    shared = share_submissions(answers)
    assert ["f"] in shared.values()
    assert shared["answers_1"] == ["a", "c", "g"]
