"""The training families of rmt.train: what differs between training a language model on a
corpus, an algorithmic task, a classification task or RMT over a pretrained backbone.

`base` defines the Family protocol the trainer uses and the pieces the families share;
`registry` maps --dataset to a family. The data, generators and metrics stay in rmt.lm and
rmt.tasks; a family module holds the flags, the checks and the Family class.
"""
