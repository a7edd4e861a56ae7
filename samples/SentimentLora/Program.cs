Console.WriteLine("SentimentLora: under construction.");
