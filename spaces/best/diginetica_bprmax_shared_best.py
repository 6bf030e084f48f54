from collections import OrderedDict
gru4rec_params = OrderedDict([
    ('layers', [512]),
    ('loss', 'bpr-max'),
    ('batch_size', 128),
    ('dropout_p_embed', 0.5),
    ('dropout_p_hidden', 0.3),
    ('learning_rate', 0.05),
    ('momentum', 0.15),
    ('sample_alpha', 0.3),
    ('n_sample', 2048),
    ('embedding', 0),
    ('constrained_embedding', True),
    ('n_epochs', 10),
    ('bpreg', 0.9),
    ('elu_param', 1.0),
    ('logq', 0.0),
])
