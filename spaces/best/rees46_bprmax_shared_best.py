from collections import OrderedDict
gru4rec_params = OrderedDict([
    ('layers', [512]),
    ('loss', 'bpr-max'),
    ('batch_size', 32),
    ('dropout_p_embed', 0.1),
    ('dropout_p_hidden', 0.0),
    ('learning_rate', 0.03),
    ('momentum', 0.55),
    ('sample_alpha', 0.2),
    ('n_sample', 2048),
    ('embedding', 0),
    ('constrained_embedding', True),
    ('n_epochs', 10),
    ('bpreg', 0.75),
    ('elu_param', 0.5),
    ('logq', 0.0),
])
