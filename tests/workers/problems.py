"""The problem the worker tests solve: small, with public and hidden tests, so that every path (scoring,
feedback, hidden-test reporting) runs in seconds on the tiny model."""

DOUBLE = {
    "title": "Double",
    "statement": "Read an integer n from standard input and print 2*n.",
    "tests": {"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"], "testtype": "stdin"},
    "hidden_tests": {"inputs": ["7\n"], "outputs": ["14\n"], "testtype": "stdin"},
}
