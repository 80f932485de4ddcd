"""The grammar of the .nl language (nl.lark), installed as package data of `nldsl.grammar`."""
