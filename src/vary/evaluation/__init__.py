"""`vary eval`: variations of a folder of images, made through the variation service, scored and reported.

The figures are vary's own: every image comes from VariationService.create, the road an API request
takes (registry, gateway, local model scheduler, engine, PNG encoding). Scoring uses CLIP (the
IP-Adapter paper's protocol): fidelity (CLIP-I), text alignment (CLIP-T), diversity, and the speed
measured while generating. Only the command line imports this package.
"""
