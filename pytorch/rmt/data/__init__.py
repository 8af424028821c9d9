"""Language-model corpora: vocabularies, cached encoded splits, ordered stream iterators."""
