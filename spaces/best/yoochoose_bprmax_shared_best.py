from collections import OrderedDict
gru4rec_params = OrderedDict([
    ('layers', [448]),
    ('loss', 'bpr-max'),
    ('batch_size', 48),
    ('dropout_p_embed', 0.25),
    ('dropout_p_hidden', 0.0),
    ('learning_rate', 0.075),
    ('momentum', 0.1),
    ('sample_alpha', 0.2),
    ('n_sample', 2048),
    ('embedding', 0),
    ('constrained_embedding', True),
    ('n_epochs', 10),
    ('bpreg', 0.5),
    ('elu_param', 0.0),
    ('logq', 0.0),
])
