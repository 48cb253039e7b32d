from experiments.fill50k.run import main

main()
