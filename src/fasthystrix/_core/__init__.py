"""The command core: circuit state, tickets, rolling metrics and the do() path (compiled
twins and the pure-Python ones), plus the rules and types every other layer shares."""
