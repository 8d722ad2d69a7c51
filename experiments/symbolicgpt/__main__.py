from experiments.symbolicgpt import main

main()
