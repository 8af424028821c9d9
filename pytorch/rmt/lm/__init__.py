"""Language modelling: corpora, vocabularies, ordered stream iterators, corpus preparation, and evaluation."""
